"""Reports: tables built only from result records."""
