"""Study multisite_cxr (being ported)."""
