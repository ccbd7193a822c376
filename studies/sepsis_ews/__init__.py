"""Study sepsis_ews (being ported)."""
