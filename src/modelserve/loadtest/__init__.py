"""What Locust's simulated clients send; the locust role mounts it into the Locust container."""
