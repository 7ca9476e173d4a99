"""``GET /v1/transactions/<transid>``: where an accepted event stands."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, json

from api.auth import requires_key
from api.errors import error_json
from api.operations import KEY_OR_BEARER, Answer, Message, Operation, Transid, route
from shared.db.engine import session_scope
from shared.ids import issued_at, issued_for, well_formed
from shared.records.keys import KeyInfo
from shared.retention.queries import removed_before
from shared.retention.rules import expired_from_log
from shared.transactions.schemas import TransactionView
from shared.transactions.views import transaction_view

bp = Blueprint("status", __name__)

EXPIRED = ("transaction expired from the log: finished transactions are removed after the "
           "retention period")


TRANSACTION = Operation(
    "GET", "/v1/transactions/{transid}", "The state of one accepted event",
    security=KEY_OR_BEARER, params=Transid,
    responses={200: Answer("The transaction", TransactionView),
               401: Answer("No valid key", Message),
               404: Answer("Not a transaction of this account, or expired from the log", Message),
               503: Answer("The database is unreachable", Message)})


@route(bp, TRANSACTION)
@requires_key()
def transaction(key: KeyInfo, transid: str) -> Response:
    if not well_formed(transid):
        return error_json(404, "no such transaction")
    with session_scope() as session:
        view = transaction_view(session, key.account_id, transid)
        # No row yet: either a worker has not taken it, retention removed it, or it is not ours.
        if view is None:
            if not issued_for(current_app.extensions["eventdesk.secret"], key.account_id, transid):
                return error_json(404, "no such transaction")
            if expired_from_log(issued_at(transid), removed_before(session)):
                return error_json(404, EXPIRED)
            view = TransactionView.queued(transid)
    return Response(json.dumps(view.to_json()), 200, mimetype="application/json")
