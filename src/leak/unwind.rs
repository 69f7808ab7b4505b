//! Call-stack capture without frame pointers (DWARF CFI from .eh_frame).
