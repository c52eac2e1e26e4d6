"""The build machine's test bed: its host setup (`make host`) and images (`make images`)."""
