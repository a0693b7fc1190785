"""A client generated from proto/apitoken/v1/apitoken.proto with grpcio-tools,
against a running apitoken-server: what a Python team integrating with
apitoken would write. Environment: APITOKEN_ADDRESS (host:port),
APITOKEN_OWNER (an owner token of namespace team-a), GENERATED (the folder of
the generated modules)."""

import os
import re
import sys
import unittest

sys.path.insert(0, os.environ["GENERATED"])

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from apitoken.v1 import apitoken_pb2, apitoken_pb2_grpc  # noqa: E402

ADDRESS = os.environ["APITOKEN_ADDRESS"]
OWNER = os.environ["APITOKEN_OWNER"]
SECRET = re.compile(r"^apitoken_[0-9A-Za-z]{49}$")


def bearer(secret):
    return (("authorization", f"Bearer {secret}"),)


def details(error, kind):
    status = rpc_status.from_call(error)
    for detail in status.details:
        message = kind()
        if detail.Unpack(message):
            return message
    raise AssertionError(f"no {kind.DESCRIPTOR.full_name} in {status}")


class GeneratedClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(ADDRESS)
        cls.stub = apitoken_pb2_grpc.ApiTokenServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def create(self, token_id, role=apitoken_pb2.ROLE_EDITOR):
        return self.stub.CreateApiToken(
            apitoken_pb2.CreateApiTokenRequest(
                parent="namespaces/team-a",
                api_token_id=token_id,
                api_token=apitoken_pb2.ApiToken(role=role, display_name="python", labels={"lang": "python"}),
            ),
            metadata=bearer(OWNER),
        )

    def test_lifecycle(self):
        created = self.create("python-client")
        self.assertRegex(created.secret, SECRET)
        self.assertEqual(created.api_token.name, "namespaces/team-a/apitokens/python-client")
        self.assertEqual(created.api_token.state, apitoken_pb2.ApiToken.STATE_ACTIVE)
        self.assertEqual(dict(created.api_token.labels), {"lang": "python"})

        listed, call = self.stub.ListApiTokens.with_call(
            apitoken_pb2.ListApiTokensRequest(parent="namespaces/team-a"), metadata=bearer(OWNER)
        )
        names = [token.name for token in listed.api_tokens]
        self.assertIn(created.api_token.name, names)
        self.assertNotIn(created.secret, str(listed))
        headers = dict(call.initial_metadata())
        self.assertEqual(headers["x-ratelimit-limit"], "30")
        self.assertIn("x-ratelimit-remaining", headers)

        me = self.stub.VerifyApiToken(apitoken_pb2.VerifyApiTokenRequest(), metadata=bearer(created.secret))
        self.assertEqual(me.api_token.role, apitoken_pb2.ROLE_EDITOR)

        revoked = self.stub.RevokeApiToken(
            apitoken_pb2.RevokeApiTokenRequest(name=created.api_token.name), metadata=bearer(OWNER)
        )
        self.assertEqual(revoked.state, apitoken_pb2.ApiToken.STATE_REVOKED)
        with self.assertRaises(grpc.RpcError) as refused:
            self.stub.VerifyApiToken(apitoken_pb2.VerifyApiTokenRequest(secret=created.secret))
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(details(refused.exception, error_details_pb2.ErrorInfo).reason, "TOKEN_REVOKED")

    def test_errors_carry_google_rpc_details(self):
        with self.assertRaises(grpc.RpcError) as missing:
            self.stub.ListApiTokens(apitoken_pb2.ListApiTokensRequest(parent="namespaces/team-a"))
        self.assertEqual(missing.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        info = details(missing.exception, error_details_pb2.ErrorInfo)
        self.assertEqual((info.reason, info.domain), ("TOKEN_MISSING", "apitoken"))

        with self.assertRaises(grpc.RpcError) as invalid:
            self.stub.CreateApiToken(
                apitoken_pb2.CreateApiTokenRequest(parent="namespaces/team-a", api_token_id="Bad Id"),
                metadata=bearer(OWNER),
            )
        self.assertEqual(invalid.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        fields = sorted(v.field for v in details(invalid.exception, error_details_pb2.BadRequest).field_violations)
        self.assertEqual(fields, ["api_token", "api_token_id"])

        with self.assertRaises(grpc.RpcError) as foreign:
            self.stub.ListApiTokens(apitoken_pb2.ListApiTokensRequest(parent="namespaces/team-b"), metadata=bearer(OWNER))
        self.assertEqual(foreign.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(details(foreign.exception, error_details_pb2.ErrorInfo).reason, "NAMESPACE_MISMATCH")

    def test_event_stream(self):
        token = self.create("python-watched", role=apitoken_pb2.ROLE_VIEWER)
        stream = self.stub.WatchApiTokenEvents(
            apitoken_pb2.WatchApiTokenEventsRequest(parent="namespaces/team-a"), metadata=bearer(OWNER)
        )
        first = next(stream)
        self.assertEqual(len(first.events), 0)
        self.stub.RevokeApiToken(apitoken_pb2.RevokeApiTokenRequest(name=token.api_token.name), metadata=bearer(OWNER))
        for message in stream:
            if message.events:
                event = message.events[0]
                self.assertEqual(event.kind, apitoken_pb2.ApiTokenEvent.KIND_REVOKED)
                self.assertEqual(event.api_token, token.api_token.name)
                self.assertGreater(event.sequence, first.sequence)
                break
        stream.cancel()


if __name__ == "__main__":
    unittest.main(verbosity=2)
