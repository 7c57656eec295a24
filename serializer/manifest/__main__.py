"""``python -m serializer.manifest``: print the manifest's JSON Schema."""

import json
import sys

from .model import json_schema

sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
