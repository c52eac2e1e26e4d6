"""The Kafka stand-in image's entrypoint and kafka-topics.sh (build context: testbed.images)."""
