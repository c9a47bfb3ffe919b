"""Deployment jobs: load an uploaded network, check the tensors its pre-processing names, mark it ready.

A deployment can take minutes (a trial load in a child process, then the load into the engine process),
longer than a broker should hold an unacknowledged message (RabbitMQ redelivers at its consumer timeout).
So the worker takes a lease on the network in the store, acknowledges the job, and renews the lease while it
works. If the worker dies, the lease runs out and the consumers' maintenance queues the job again; the
attempts are counted on the network, so a model that kills its worker every time fails after MAX_ATTEMPTS
instead of looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from broker.port import Delivery
from broker.topology import DEPLOYMENT
from consumers.engines import EngineLost, Engines
from consumers.models import ModelCache
from consumers.results import ResultWriter
from consumers.runner import parse_or_dead_letter, settle, through_store_outages
from consumers.sandbox import Sandbox
from engine.errors import EngineError
from schemas.common import utc_now
from schemas.documents import NetworkDoc, TaskOutcome, TaskStatus
from schemas.messages import DeploymentJob
from schemas.networks import NetworkStatus
from store.port import NETWORKS, Store, StoreUnavailable

log = structlog.get_logger("deployment")

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Lease:
    network: NetworkDoc
    token: str


class DeploymentWorker:
    def __init__(
        self,
        store: Store,
        models: ModelCache,
        engines: Engines,
        results: ResultWriter,
        *,
        sandbox: Sandbox,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self._store = store
        self._models = models
        self._engines = engines
        self._results = results
        self._sandbox = sandbox
        self._lease = lease

    async def handle(self, delivery: Delivery) -> None:
        job = await parse_or_dead_letter(delivery, DeploymentJob.model_validate_json)
        if job is None:
            return
        with structlog.contextvars.bound_contextvars(task_id=job.task_id, network_id=job.network_id):
            leases: list[Lease] = []

            async def claim() -> None:
                if (lease := await self._claim(job)) is not None:
                    leases.append(lease)

            # Acknowledged once the lease is taken (or nothing is left to do): the lease guards the rest.
            await settle(
                delivery,
                claim,
                delivery_limit=DEPLOYMENT.delivery_limit,
                store=self._store,
                give_up=lambda reason: self._fail(job, reason, token=None),
            )
            for lease in leases:
                await self._deploy_leased(job, lease)

    async def _claim(self, job: DeploymentJob) -> Lease | None:
        network = await self._store.get(NETWORKS, job.network_id, owners=[job.owner])
        if network is None or network.status is not NetworkStatus.DEPLOYING:
            await self._report(job, network)
            return None
        now = utc_now()
        if network.lease_until is not None and network.lease_until > now:
            log.info("deployment_leased_elsewhere", lease_until=network.lease_until.isoformat())
            return None
        if network.deploy_attempts >= MAX_ATTEMPTS:
            reason = (
                f"gave up after {network.deploy_attempts} attempts: the consumer running it stopped each time"
            )
            await self._fail(job, reason, token=network.lease_token)
            return None
        token = uuid.uuid4().hex
        taken = await self._store.update(
            NETWORKS,
            network.id,
            owner=network.owner,
            changes={
                "lease_token": token,
                "lease_until": now + self._lease,
                "deploy_attempts": network.deploy_attempts + 1,
            },
            expect={"lease_token": network.lease_token},
        )
        if taken is None:
            log.info("deployment_claimed_elsewhere")
            return None
        log.info("deployment_leased", attempt=taken.deploy_attempts)
        return Lease(taken, token)

    async def _deploy_leased(self, job: DeploymentJob, lease: Lease) -> None:
        renewing = asyncio.create_task(self._renew(lease))
        try:
            await through_store_outages(self._store, lambda: self._deploy(job, lease))
        except asyncio.CancelledError:
            # Shutting down: hand the deployment over at once rather than when the lease runs out.
            await asyncio.shield(self._release(lease))
            raise
        except Exception:
            log.exception("deployment_interrupted")
            await self._release(lease)
        finally:
            renewing.cancel()

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            with contextlib.suppress(StoreUnavailable):
                renewed = await self._store.update(
                    NETWORKS,
                    lease.network.id,
                    owner=lease.network.owner,
                    changes={"lease_until": utc_now() + self._lease},
                    expect={"lease_token": lease.token},
                )
                if renewed is None:
                    log.warning("deployment_lease_lost")
                    return

    async def _release(self, lease: Lease) -> None:
        """The lease ends now; the maintenance sweep queues the deployment again."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.update(
                NETWORKS,
                lease.network.id,
                owner=lease.network.owner,
                changes={"lease_until": utc_now()},
                expect={"lease_token": lease.token},
            )

    async def _deploy(self, job: DeploymentJob, lease: Lease) -> None:
        """Safe to run again after a store outage: a deployment that already ended only reports its end."""
        network = await self._store.get(NETWORKS, job.network_id, owners=[job.owner])
        if network is None or network.status is not NetworkStatus.DEPLOYING:
            await self._report(job, network)
            return
        if network.lease_token != lease.token:
            log.warning("deployment_lease_lost")
            return
        self._models.forget(network.id)
        # A trial in a child process first: a model that exhausts memory, spins or crashes ends that process.
        folder = await self._models.materialise(network.id, network.files)
        trial = await self._sandbox.trial(folder, network.preprocessing, network.postprocessings)
        if not trial.ok:
            self._models.forget(network.id)
            await self._fail(job, trial.error, token=lease.token)
            return
        try:
            # Checked in the trial; loading it into this consumer's engine now spares the first request.
            await self._engines.load(await self._models.get(network.id, network.files, network.preprocessing))
        except (EngineError, EngineLost) as error:
            self._models.forget(network.id)
            await self._fail(job, str(error), token=lease.token)
            return
        updated = await self._end(
            network.id,
            network.owner,
            {"status": NetworkStatus.READY, "signature": trial.signature},
            token=lease.token,
        )
        if updated is not None:
            log.info("network_deployed")
            await self._report(job, updated)

    async def _report(self, job: DeploymentJob, network: NetworkDoc | None) -> None:
        """The task's outcome, from the network's stored end."""
        if network is None:
            outcome = TaskOutcome(
                task_id=job.task_id, status=TaskStatus.ERROR, error="the network was deleted"
            )
        elif network.status is NetworkStatus.READY:
            outcome = self._success(network)
        else:
            error = network.deploy_error or "the deployment failed"
            outcome = TaskOutcome(task_id=job.task_id, status=TaskStatus.ERROR, error=error)
        await self._results.write(outcome)

    async def _end(
        self, network_id: str, owner: str, changes: dict[str, Any], *, token: str | None
    ) -> NetworkDoc | None:
        """The deployment's last write, made only by the lease's holder: another may have taken over."""
        return await self._store.update(
            NETWORKS,
            network_id,
            owner=owner,
            changes={**changes, "lease_token": None, "lease_until": None, "update_date": utc_now()},
            expect={"lease_token": token},
        )

    @staticmethod
    def _success(network: NetworkDoc) -> TaskOutcome:
        signature = network.signature.model_dump(mode="json") if network.signature else None
        return TaskOutcome(
            task_id=network.task_id,
            status=TaskStatus.SUCCESS,
            data={"network_id": int(network.id), "signature": signature},
        )

    async def _fail(self, job: DeploymentJob, reason: str, *, token: str | None) -> None:
        changes = {"status": NetworkStatus.FAILED, "deploy_error": reason}
        ended = await self._end(job.network_id, job.owner, changes, token=token)
        if ended is None:
            return  # deleted, or another consumer holds the deployment now
        log.warning("network_rejected", reason=reason)
        await self._report(job, ended)
