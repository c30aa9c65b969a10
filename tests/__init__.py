"""memexpose test suite (a package, so test folders never shadow real packages like qemu)."""
