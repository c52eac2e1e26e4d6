"""Host tools the nginx role installs on the VM: standalone stdlib-only scripts for its python3."""
