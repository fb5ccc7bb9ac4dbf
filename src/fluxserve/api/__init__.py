"""HTTP dialects over the one job model. Imports no torch (a test checks it)."""
