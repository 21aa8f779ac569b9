"""raptr: a client for the raptr training service (progressive subnetwork pretraining).

See python/README.md; the wire code under raptr.v1 is generated from proto/ at build time.
"""
from raptr.client import (TERMINAL, TLS, Checkpoint, CheckpointRejected, Client, Eval, Job,
                          Rewound, Snapshot, StateChanged, Step)
from raptr.errors import (FailedPrecondition, InvalidSpec, NotFound, PermissionDenied,
                          RaptrError, Unauthenticated, Unavailable)
from raptr.spec import SpecError, to_job_spec

__all__ = ["Client", "TLS", "Job", "Snapshot", "StateChanged", "Step", "Eval", "Checkpoint",
           "CheckpointRejected", "Rewound", "TERMINAL", "RaptrError", "InvalidSpec", "NotFound",
           "PermissionDenied", "Unauthenticated", "FailedPrecondition", "Unavailable",
           "SpecError", "to_job_spec"]
