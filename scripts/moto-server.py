"""The local S3/STS server: moto's server over HTTP and HTTPS at once, with two checks AWS makes
and moto 5.2.5 does not: a role's trust policy on AssumeRole, and a bucket policy's
`aws:SecureTransport` condition.

Run with the Python of moto's virtual environment:

    python scripts/moto-server.py --host 127.0.0.1 --port 5000 \
        --tls-port 5443 --tls-cert server.pem --tls-key server.key

Both listeners serve the same buckets and roles, so a test can show that a bucket whose policy
denies requests without TLS refuses the plain port and serves the TLS one.

Trust policies.
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

Bucket policies. Moto evaluates a bucket policy on object requests, but it gives a statement's
condition no request values, does not know the `Bool` operator, and treats a statement whose
condition does not hold as a denial. Here, every object request carries `aws:SecureTransport`
(whether it came in on the TLS listener), `Bool` compares it, and a statement whose condition does
not hold does not apply, as in AWS. So the customer setup's SSL-only policy (deny `s3:*` when
`aws:SecureTransport` is false) refuses the plain port and lets the TLS one through.
"""

import argparse
import json
import sys
import threading

from moto.iam import policy_conditions
from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, PermissionResult
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import FakeBucket
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend
from moto.utilities.utils import get_partition
from werkzeug.serving import make_server

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


# Whether the request this thread serves came in over TLS (the server runs a thread per request).
current_request = threading.local()


def secure_transport():
    return "true" if getattr(current_request, "secure", False) else "false"


def bool_operation(expected, actual):
    return str(actual).lower() in [str(value).lower() for value in as_list(expected)]


policy_conditions.CONDITION_OPERATIONS["Bool"] = bool_operation


def bucket_permission(self, action, resource):
    if self.policy is None:
        return PermissionResult.NEUTRAL
    return IAMPolicy(self.policy.decode()).is_action_permitted(
        action, resource, incoming_condition_values={"aws:SecureTransport": secure_transport()}
    )


FakeBucket.get_permission = bucket_permission

moto_statement_permits = IAMPolicyStatement.is_action_permitted


def statement_permits(self, action, resource="*", principal=None, incoming_condition_values=None):
    # A statement applies only where its condition holds; it does not deny where it does not.
    if incoming_condition_values is not None and not self._check_conditions(
        incoming_condition_values
    ):
        return PermissionResult.NEUTRAL
    return moto_statement_permits(self, action, resource, principal, incoming_condition_values)


IAMPolicyStatement.is_action_permitted = statement_permits


class RecordScheme:
    """Notes for the policy check whether each request came in over TLS."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        current_request.secure = environ.get("wsgi.url_scheme") == "https"
        return self.app(environ, start_response)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="the plain HTTP port")
    parser.add_argument("--tls-port", type=int, help="the HTTPS port (with --tls-cert and --tls-key)")
    parser.add_argument("--tls-cert", help="the server's certificate chain (PEM)")
    parser.add_argument("--tls-key", help="the server's private key (PEM)")
    args = parser.parse_args(argv)
    if args.tls_port and not (args.tls_cert and args.tls_key):
        parser.error("--tls-port needs --tls-cert and --tls-key")
    app = RecordScheme(DomainDispatcherApplication(create_backend_app))

    def server(port, ssl_context=None):
        return make_server(
            args.host,
            port,
            app,
            threaded=True,
            request_handler=MotoRequestHandler,
            ssl_context=ssl_context,
        )

    plain = server(args.port)
    if args.tls_port:
        tls = server(args.tls_port, (args.tls_cert, args.tls_key))
        threading.Thread(target=tls.serve_forever, name="tls", daemon=True).start()
    plain.serve_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
