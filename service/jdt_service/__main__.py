"""``python -m jdt_service``: run the scoring service (same options as ``monai-jdt serve``)."""

import sys

from jdt_service.server import main

sys.exit(main())
