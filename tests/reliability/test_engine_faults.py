"""The engine never lets an exception escape its event handling: an observer or progress callback
that raises is logged, and every request still ends (here: succeeds)."""

import asyncio

import pytest

from legodiffusion import Engine, EngineConfig, sd_txt2img

pytestmark = pytest.mark.reliability

ARGS = {"prompt": "a harbour", "steps": 2, "seed": 1, "height": 64, "width": 64}


def test_raising_callbacks_leave_every_request_to_finish(sd15, caplog):
    def boom(*_):
        raise RuntimeError("observer bug")

    async def main():
        async with Engine({"sd15": sd15}, EngineConfig(workers=2, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            engine.on_dispatch_done = boom
            runs = [engine.submit("sd-txt2img", dict(ARGS, seed=s), on_progress=boom) for s in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*(r.future for r in runs)), timeout=120)
            return results, runs, engine.plane.live_count()

    results, runs, left = asyncio.run(main())
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(r.nodes_done == r.nodes_total for r in runs)
    assert left == 0
    assert "observer bug" in caplog.text
