"""Which model a recognition version or spec names, as a tenant sees it: the ModelRef its jobs carry.

One set of rules for every door (HTTP routes and queue producers): a tenant reads its own and public
documents, a spec infers with its current version, a network runs once its deployment succeeded.
"""

from __future__ import annotations

from schemas.documents import PUBLIC_OWNER, NetworkDoc, SpecDoc, VersionDoc
from schemas.messages import ModelRef
from schemas.networks import NetworkStatus
from store.port import NETWORKS, SPECS, VERSIONS, Store


class NotRunnable(Exception):
    """The version or spec does not exist for this tenant, or its network cannot run; `field` names the id."""

    def __init__(self, reason: str, *, field: str) -> None:
        super().__init__(reason)
        self.field = field


async def version_model(store: Store, tenant: str, version_id: str) -> ModelRef:
    version = await store.get(VERSIONS, version_id, owners=[tenant, PUBLIC_OWNER])
    if version is None:
        raise NotRunnable(f"recognition version {version_id} does not exist", field="version_id")
    return await version_model_ref(store, version)


async def spec_model(store: Store, tenant: str, spec_id: str) -> ModelRef:
    spec = await store.get(SPECS, spec_id, owners=[tenant, PUBLIC_OWNER])
    if spec is None:
        raise NotRunnable(f"recognition spec {spec_id} does not exist", field="spec_id")
    if spec.current_version_id is None:
        raise NotRunnable(f"spec {spec_id} has no current version; create a version first", field="spec_id")
    version = await store.get(VERSIONS, str(spec.current_version_id), owners=[spec.owner])
    if version is None:
        raise NotRunnable(
            f"the current version of spec {spec_id} no longer exists", field="current_version_id"
        )
    return await version_model_ref(store, version, spec)


def network_model_ref(network: NetworkDoc) -> ModelRef:
    """The model of a network's raw inference (no version): only once its deployment succeeded."""
    if network.status is NetworkStatus.FAILED:
        raise NotRunnable(
            f"network {network.id} failed its deployment; see task {network.task_id}", field="network_id"
        )
    if network.status is not NetworkStatus.READY:
        raise NotRunnable(
            f"network {network.id} is still deploying; wait for task {network.task_id}", field="network_id"
        )
    return ModelRef(network_id=network.id, network_files=network.files, preprocessing=network.preprocessing)


async def version_model_ref(store: Store, version: VersionDoc, spec: SpecDoc | None = None) -> ModelRef:
    owners = [version.owner, PUBLIC_OWNER]
    if spec is None:
        spec = await store.get(SPECS, version.spec_id, owners=owners)
    network = await store.get(NETWORKS, version.network_id, owners=owners)
    if spec is None or network is None:
        raise NotRunnable(f"version {version.id} lost its spec or network", field="version_id")
    return network_model_ref(network).model_copy(
        update={
            "version_id": version.id,
            "outputs": spec.outputs,
            "post_processings": version.post_processings,
        }
    )


async def identified_model(store: Store, tenant: str, identifier: str) -> ModelRef:
    """Annolab's modelIdentifier: a spec's id or unique name (the tenant's own first), else a version's id."""
    spec = await store.get(SPECS, identifier, owners=[tenant, PUBLIC_OWNER])
    if spec is None:
        for owners in ([tenant], [PUBLIC_OWNER]):
            named = await store.find(SPECS, owners=owners, where={"name": identifier}, limit=2)
            if named.count > 1:
                raise NotRunnable(f"{named.count} specs are named {identifier!r}; use an id", field="model")
            if named.items:
                spec = named.items[0]
                break
    if spec is not None:
        return await spec_model(store, tenant, spec.id)
    if identifier.isdigit():
        return await version_model(store, tenant, identifier)
    raise NotRunnable(f"no spec has the id or name {identifier!r}", field="model")
