"""Recording helpers shared by the session tests."""

from __future__ import annotations

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def record_ioi_session(engine, name: str | None = None, sweep_kind: str = "head"):
    """Record a session that exercises every event kind the engine supports, as the TUI would."""
    from mechscope.engine import (
        ActivationPatch,
        HeadAblation,
        HeadScale,
        Metric,
        SteeringVector,
    )
    from mechscope.sessions import Session

    session = Session.create(name, engine=engine)
    metric = Metric("logit_diff", " Mary", " John")
    session.record_prompt(CLEAN, CORRUPT)
    session.record_metric(metric)
    ablate = HeadAblation(layer=1, head=2)
    session.record_intervention("added", 1, ablate)
    session.record_run(CLEAN, CORRUPT, metric, [ablate],
                       engine.run(CLEAN, [ablate], metric=metric, corrupted=CORRUPT))
    scale = HeadScale(layer=2, head=0, factor=3.0)
    session.record_intervention("added", 2, scale)
    session.record_run(CLEAN, CORRUPT, metric, [ablate, scale],
                       engine.run(CLEAN, [ablate, scale], metric=metric, corrupted=CORRUPT))
    vector = engine.build_steering_vector("happy", 1, ["I love this movie"], ["I hate this film"])
    session.save_vector("happy", vector)
    steer = SteeringVector(layer=1, vector_id="happy", coeff=4.0)
    session.record_intervention("added", 3, steer)
    session.record_intervention("toggled", 1, enabled=False)
    active = [ablate.with_enabled(False), scale, steer]
    session.record_run(CLEAN, CORRUPT, metric, active,
                       engine.run(CLEAN, active, metric=metric, corrupted=CORRUPT, top_k=5))
    references = ["The cat sat on the mat", "One two three four five"]
    session.record_reference_prompts(references)
    saved_references = list(engine.reference_prompts)
    engine.set_reference_prompts(references)
    try:
        mixed = [HeadAblation(layer=0, head=1, mode="mean"),
                 HeadAblation(layer=2, head=3, mode="resample"),
                 ActivationPatch("L1.resid_pre", CORRUPT, positions=[3])]
        for number, intervention in enumerate(mixed, 4):
            session.record_intervention("added", number, intervention)
        session.record_run(CLEAN, CORRUPT, metric, mixed,
                           engine.run(CLEAN, mixed, metric=metric, corrupted=CORRUPT))
    finally:
        engine.set_reference_prompts(saved_references)
    session.record_intervention("removed", 2)
    prob = Metric("prob", " Mary")
    session.record_metric(prob)
    session.record_run("The cat sat on the", None, prob, [],
                       engine.run("The cat sat on the", [], metric=prob))
    session.record_note("ablating L1.H2 lowers the logit difference")
    if hasattr(engine, "sweep"):
        sweep = engine.sweep(sweep_kind, CLEAN, CORRUPT, metric)
        session.record_sweep(sweep, CLEAN, CORRUPT, metric, "noising")
    if hasattr(engine, "generate"):
        tokens = engine.generate(CLEAN, [scale], max_new_tokens=6)
        session.record_generate(CLEAN, [scale], {"max_new_tokens": 6, "temperature": 0.0, "seed": 0},
                                tokens)
    engine.vectors.pop("happy", None)
    return session
