"""``GET /v1/transactions/<transid>``: where an accepted event stands."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, json

from api.auth import requires_key
from api.errors import error_json
from shared.db.engine import session_scope
from shared.ids import issued_for, well_formed
from shared.intake.service import KeyInfo
from shared.transactions.schemas import TransactionView
from shared.transactions.service import transaction_view

bp = Blueprint("status", __name__)


@bp.get("/v1/transactions/<transid>")
@requires_key()
def transaction(key: KeyInfo, transid: str) -> Response:
    if not well_formed(transid):
        return error_json(404, "no such transaction")
    with session_scope() as session:
        view = transaction_view(session, key.account_id, transid)
    if view is None:
        # No row yet: either a worker has not taken it, or it is not ours to show.
        if not issued_for(current_app.extensions["eventdesk.secret"], key.account_id, transid):
            return error_json(404, "no such transaction")
        view = TransactionView.queued(transid)
    return Response(json.dumps(view.to_json()), 200, mimetype="application/json")
