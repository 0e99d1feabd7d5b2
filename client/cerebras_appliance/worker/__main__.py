"""``python -m cerebras_appliance.worker``: the entrypoint of every input worker."""

import sys

from cerebras_appliance.worker.entrypoint import main

sys.exit(main())
