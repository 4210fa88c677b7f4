#!/usr/bin/env bash
# Pre-apply check of the encrypted StorageClass: refuses the shipped placeholder key (and
# any malformed one) before it reaches the cluster, where it would surface only as PVCs
# stuck in Pending or, worse, a class someone "fixes" by dropping the key.
#
#   kubectl kustomize infra/kubernetes/storage/aws-ebs \
#     | infra/kubernetes/check-storage-keys.sh | kubectl apply -f -
#
# Reads rendered manifests on stdin; writes them unchanged to stdout only when every
# StorageClass carries a well-formed customer-managed key:
#   kmsKeyId                 arn:aws[-partition]:kms:<region>:<12-digit account>:key/<id> | alias/<name>
#   disk-encryption-kms-key  projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>
#   diskEncryptionSetID      /subscriptions/<uuid>/resourceGroups/<g>/providers/Microsoft.Compute/diskEncryptionSets/<n>
# and none of them is a placeholder (PLACEHOLDER, the documentation's example account
# 111122223333 or an all-zero id).  Otherwise nothing is written to stdout (so the
# `kubectl apply` behind it applies nothing) and each problem goes to stderr.
# Exit codes: 0 passed, 1 a key is missing, a placeholder or malformed, 2 no StorageClass.
set -euo pipefail

input="$(cat)"
problems=()
classes=0

check_value() {
    local name="$1" value="$2" re="$3" what="$4"
    if [[ "$value" == *PLACEHOLDER* || "$value" == *111122223333* \
          || "$value" == *00000000-0000-0000-0000-000000000000* ]]; then
        problems+=("StorageClass $name: $what is still the placeholder '$value'; set it in storage-keys.env next to the kustomization")
    elif ! [[ "$value" =~ $re ]]; then
        problems+=("StorageClass $name: $what '$value' is not a $5")
    fi
}

# One document at a time: kind, name and the three key parameters (kubectl kustomize
# prints block-style YAML, two-space indent, parameters as plain or quoted scalars).
flush() {
    [[ "$kind" == StorageClass ]] || return 0
    classes=$((classes + 1))
    local found=0
    if [[ -n "$aws" ]]; then
        found=1
        check_value "$name" "$aws" '^arn:aws(-[a-z]+)*:kms:[a-z0-9-]+:[0-9]{12}:(key/[A-Za-z0-9-]+|alias/[A-Za-z0-9/_-]+)$' \
            kmsKeyId "KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)"
    fi
    if [[ -n "$gce" ]]; then
        found=1
        check_value "$name" "$gce" '^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z0-9-]+/keyRings/[A-Za-z0-9_-]+/cryptoKeys/[A-Za-z0-9_-]+$' \
            disk-encryption-kms-key "Cloud KMS key (projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>)"
    fi
    if [[ -n "$azure" ]]; then
        found=1
        check_value "$name" "$azure" '^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[^/]+/providers/Microsoft\.Compute/diskEncryptionSets/[^/]+$' \
            diskEncryptionSetID "disk encryption set id (/subscriptions/<uuid>/resourceGroups/<g>/providers/Microsoft.Compute/diskEncryptionSets/<n>)"
    fi
    if ((!found)); then
        problems+=("StorageClass $name: no customer-managed key (kmsKeyId, disk-encryption-kms-key or diskEncryptionSetID)")
    fi
}

unquote() { local v="$1"; v="${v#\"}"; v="${v%\"}"; v="${v#\'}"; v="${v%\'}"; printf '%s' "$v"; }

kind="" name="" aws="" gce="" azure="" section=""
while IFS= read -r line || [[ -n "$line" ]]; do
    if [[ "$line" == "---"* ]]; then
        flush
        kind="" name="" aws="" gce="" azure="" section=""
        continue
    fi
    case "$line" in
        kind:*) kind="$(unquote "$(echo "${line#kind:}" | xargs)")" ;;
        [a-zA-Z]*:*) section="${line%%:*}" ;;
    esac
    if [[ "$section" == metadata && "$line" =~ ^\ \ name:\ *(.*)$ ]]; then
        name="$(unquote "${BASH_REMATCH[1]}")"
    elif [[ "$section" == parameters && "$line" =~ ^\ \ ([A-Za-z.\/-]+):\ *(.*)$ ]]; then
        value="$(unquote "${BASH_REMATCH[2]}")"
        case "${BASH_REMATCH[1]}" in
            kmsKeyId) aws="$value" ;;
            disk-encryption-kms-key) gce="$value" ;;
            diskEncryptionSetID) azure="$value" ;;
        esac
    fi
done <<<"$input"
flush

if ((classes == 0)); then
    echo "check-storage-keys: no StorageClass in the input (pipe in: kubectl kustomize infra/kubernetes/storage/<cloud>)" >&2
    exit 2
fi
if ((${#problems[@]})); then
    for p in "${problems[@]}"; do echo "check-storage-keys: $p" >&2; done
    echo "check-storage-keys: refused; nothing was passed on to kubectl apply" >&2
    exit 1
fi
printf '%s\n' "$input"
echo "check-storage-keys: $classes StorageClass(es) carry a customer-managed key" >&2
