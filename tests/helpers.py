"""Run a delivery to completion in-process by calling the task bodies' service functions."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service import delivery as svc


def deliver(db: Session, delivery_id: int, batch_size: int = 2) -> svc.PlanResult:
    result = svc.plan(db, delivery_id, batch_size)
    for seq in result.batch_seqs:
        assert svc.begin_attempt(db, delivery_id, seq, max_attempts=5)
        svc.run_batch(db, delivery_id, seq)
    return result
