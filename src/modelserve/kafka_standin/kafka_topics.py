#!/opt/kafka/venv/bin/python
"""The part of Kafka's kafka-topics.sh that the roles use: --list and --create."""

from __future__ import annotations

import argparse
import sys

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def main() -> int:
    parser = argparse.ArgumentParser(prog="kafka-topics.sh")
    parser.add_argument("--bootstrap-server", required=True)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true")
    action.add_argument("--create", action="store_true")
    parser.add_argument("--topic")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--if-not-exists", action="store_true")
    args = parser.parse_args()
    admin = KafkaAdminClient(
        bootstrap_servers=args.bootstrap_server.split(","), bootstrap_timeout_ms=10000
    )
    try:
        if args.list:
            for topic in sorted(admin.list_topics()):
                print(topic)
            return 0
        if not args.topic:
            parser.error("--create needs --topic")
        try:
            admin.create_topics([NewTopic(args.topic, args.partitions, args.replication_factor)])
        except TopicAlreadyExistsError:
            if args.if_not_exists:
                return 0
            print(f"Topic '{args.topic}' already exists.", file=sys.stderr)
            return 1
        print(f"Created topic {args.topic}.")
        return 0
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
