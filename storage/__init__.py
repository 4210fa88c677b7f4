"""Repository storage backends behind one seam (see ebk.storage.base)."""
