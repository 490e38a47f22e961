"""Behind the face: the engine's own machinery, for ``core`` alone (and the tests).

The registry client and its retries, the embedded and storage registries,
signing and verifying, manifests, chunking, the receive and send steps, the
ledger and the receipt store. ``fsmount``, ``syncer`` and ``cli`` never import
from here (tests/unit/test_import_contract.py fails if one does); they use the
face: ``core.workspace``, ``core.inbox``, ``core.outbox`` and the other
modules directly in ``core``.
"""
