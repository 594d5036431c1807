"""Parse an OpenMetrics exposition (read from stdin) with the Prometheus
project's own parser and print it as one JSON object, for tests/operate.rs:

    {"families": [{"name", "type", "help", "samples": [{"name", "labels", "value"}]}]}

A text the parser rejects exits 1 with the parser's error on stderr, so the
Rust test fails naming it.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    try:
        families = [
            {
                "name": f.name,
                "type": f.type,
                "help": f.documentation,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                    for s in f.samples
                ],
            }
            for f in text_string_to_metric_families(text)
        ]
    except Exception as e:  # the parser raises ValueError and others
        print(f"not valid OpenMetrics: {e!r}", file=sys.stderr)
        return 1
    json.dump({"families": families}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
