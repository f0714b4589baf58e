"""A cancelled request's model call stops on a Ray worker actor too: the stop reaches the actor
on its io threads while its worker thread computes, and the actor takes the next request."""

import asyncio

import pytest

from legodiffusion import Engine, EngineConfig
from legodiffusion.runtime.stopping import STOPPED
from tests.reliability.test_stoppable import INSIDE_S, SMALL, WAIT_S, long_call_sent

pytestmark = [pytest.mark.ray, pytest.mark.reliability]


def test_cancel_stops_a_long_call_on_an_actor(sd15, ray_cluster):
    async def main():
        config = EngineConfig(workers=1, device="cpu", backend="ray")
        async with Engine({"sd15": sd15}, config) as engine:
            rec, run, d = await long_call_sent(engine)
            await asyncio.sleep(INSIDE_S)  # land inside the call, which runs for many seconds
            engine.cancel(run.request_id)
            assert (await run.future).status == "cancelled"
            _, c = await rec.wait_done(d.id)
            nxt = await asyncio.wait_for(engine.run("sd-txt2img", SMALL), WAIT_S)
            return [r.error for r in c.results], c.end_s - c.start_s, len(d.items), nxt

    errors, ran_s, items, nxt = asyncio.run(main())
    assert errors == [STOPPED] * items and ran_s >= INSIDE_S  # stopped in the middle
    assert nxt.ok, nxt.error
