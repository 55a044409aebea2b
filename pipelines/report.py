"""DVC stage `report`: the newest finished run of every stage compared — loss curves,
throughput, cost against evaluation scores — as one self-contained HTML file (`osora report`'s
code, osora.report). Not an MLflow run itself: it reads the tracking store."""

import sys

from osora.cli import main

STAGE = "report"
PARAMS = "tracking"

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
