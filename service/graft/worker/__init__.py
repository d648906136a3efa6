"""The worker process (`graft worker`, and `graft serve`'s embedded lanes): it claims jobs
and tasks from the store and runs them with graft.training and graft.advisor, then
registers the trained model (graft.registry). A composition root above those packages
(graft.training may not import it: docs/ARCHITECTURE.md).

- worker.py: `Worker` (lanes, heartbeat, a job from claim to registered model),
  `run_worker` (signals, metrics endpoint) and `main` (`python -m graft.worker`);
- lease.py: `LeaseKeeper`, the job's lease renewed and its cancel flag read;
- card.py: `model_card`, the registered model's card.
"""

from graft.worker.card import model_card
from graft.worker.lease import LeaseKeeper
from graft.worker.worker import Worker, main, run_worker

__all__ = ["LeaseKeeper", "Worker", "main", "model_card", "run_worker"]
