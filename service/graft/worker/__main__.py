"""`python -m graft.worker --config-file FILE [--worker-id ID]`: the worker process
`graft serve` starts for each lane (graft.supervisor)."""

import sys

from graft.worker.worker import main

sys.exit(main())
