"""`ebk volume`: the keys of encrypted database volumes (LUKS2, fscrypt v2), held by the KMS.

Each volume has a random 512-bit key.  It is stored only wrapped by the KEK of
``[keys]`` (key file, Vault/OpenBao Transit, AWS KMS) in a small key object
(keyobject.py) whose wrap context names the volume; the plaintext lives only in
locked memory (secret.py) and in the kernel (fscrypt keyring, dm-crypt).
"""
