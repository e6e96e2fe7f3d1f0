"""The local S3/STS server: moto's server with the trust-policy check AWS makes on AssumeRole.

Run with the Python of moto's virtual environment, with moto_server's arguments:

    python scripts/moto-server.py -H 127.0.0.1 -p 5000

Without IAM authentication (which would require every test to sign with an IAM user created in
the server first), moto lets anyone assume any role. AWS does not: the role's trust policy
decides, and the delivery system relies on its `sts:ExternalId` condition to keep one tenant from
pointing the vendor at another customer's role (the confused deputy). The connection test proves
that a customer's role refuses the vendor without the tenant's external id, so the local server
must refuse such requests the way AWS does, or that proof would fail against every correctly
set-up role.

What this adds, for roles the server holds (created through its IAM API), on every AssumeRole:
  * the trust policy must have an `Allow` statement for `sts:AssumeRole` whose `StringEquals`
    conditions on `sts:ExternalId` all hold for the request; a request without an external id
    does not satisfy such a condition (moto treats a missing key as satisfied);
  * otherwise the answer is `AccessDenied`, as from AWS.
Conditions on other keys, and the statement's principal, are not checked: the server does not
know who the caller is. Roles the server does not hold are assumed as moto always does, so tests
that never provision a role keep working.
"""

import json
import sys

from moto.iam.models import iam_backends
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend
from moto.server import main
from moto.utilities.utils import get_partition

EXTERNAL_ID = "sts:ExternalId"


def as_list(value):
    return value if isinstance(value, list) else [value]


def statement_allows(statement, external_id):
    if statement.get("Effect") != "Allow":
        return False
    actions = as_list(statement.get("Action", []))
    if not any(action in ("sts:AssumeRole", "sts:*", "*") for action in actions):
        return False
    for operator, values in statement.get("Condition", {}).items():
        for key, expected in values.items():
            if key != EXTERNAL_ID:
                continue
            if operator != "StringEquals":
                # Unknown to this check: refuse rather than guess, so a test cannot pass on a
                # condition the server did not evaluate.
                return False
            if external_id is None or external_id not in as_list(expected):
                return False
    return True


def trust_allows(policy_document, external_id):
    policy = json.loads(policy_document) if isinstance(policy_document, str) else policy_document
    return any(statement_allows(s, external_id) for s in as_list(policy.get("Statement", [])))


def held_role(region_name, role_arn):
    parts = role_arn.split(":")
    if len(parts) < 6:
        return None
    backend = iam_backends[parts[4]][get_partition(region_name)]
    return next((role for role in backend.get_roles() if role.arn == role_arn), None)


moto_assume_role = STSBackend.assume_role


def assume_role(self, region_name, role_session_name, role_arn, policy, duration, external_id):
    role = held_role(region_name, role_arn)
    if role is not None and not trust_allows(role.assume_role_policy_document, external_id):
        raise STSClientError(
            "AccessDenied",
            f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
        )
    return moto_assume_role(
        self, region_name, role_session_name, role_arn, policy, duration, external_id
    )


STSBackend.assume_role = assume_role

if __name__ == "__main__":
    sys.exit(main())
