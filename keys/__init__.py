"""Key providers behind one seam (see ebk.keys.base)."""
