"""Worker process for `rewards.math_reward` when scoring off the main thread.

Reads one JSON request per line (`{"tail": str, "golds": [str]}`) and answers one line
(`{"score": float}`), running math-verify in this process's main thread so its SIGALRM time
limits work. Exits at end of input.
"""

from __future__ import annotations

import json
import logging
import sys

from rewards.math_reward import _verify_in_main_thread


def main() -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for line in sys.stdin:
        request = json.loads(line)
        score = _verify_in_main_thread(request["tail"], request["golds"])
        sys.stdout.write(json.dumps({"score": score}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
