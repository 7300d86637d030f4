"""Signatures, checked against the published vectors."""

from twisted.trial import unittest

from soketify import signing

KEY, SECRET = "278d425bdf160c739803", "7ad3773142a6692b25b8"


class SigningTests(unittest.TestCase):
    def test_private_channel_vector(self):
        """The documented private-channel vector verifies."""
        expected = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        self.assertEqual(signing.channel_auth(KEY, SECRET, "1234.1234", "private-foobar"),
                         f"{KEY}:{expected}")
        self.assertTrue(signing.verify_channel_auth(KEY, SECRET, "1234.1234", "private-foobar",
                                                    f"{KEY}:{expected}"))

    def test_wrong_socket_channel_key_or_type_fails(self):
        """A signature for another socket, channel or key, or a non-string, is refused."""
        good = signing.channel_auth(KEY, SECRET, "1.1", "private-a")
        self.assertFalse(signing.verify_channel_auth(KEY, SECRET, "1.2", "private-a", good))
        self.assertFalse(signing.verify_channel_auth(KEY, SECRET, "1.1", "private-b", good))
        self.assertFalse(signing.verify_channel_auth("other", SECRET, "1.1", "private-a", good))
        self.assertFalse(signing.verify_channel_auth(KEY, SECRET, "1.1", "private-a", None))
        self.assertFalse(signing.verify_channel_auth(KEY, SECRET, "1.1", "private-a", "ü"))

    def test_presence_signature_uses_channel_data_verbatim(self):
        """Presence signs socket:channel:channel_data with the raw string, spacing included."""
        data = '{"user_id": "1", "user_info": {}}'
        auth = signing.channel_auth(KEY, SECRET, "1.1", "presence-a", data)
        self.assertTrue(signing.verify_channel_auth(KEY, SECRET, "1.1", "presence-a", auth, data))
        self.assertFalse(signing.verify_channel_auth(KEY, SECRET, "1.1", "presence-a", auth,
                                                     '{"user_id":"1","user_info":{}}'))

    def test_rest_string_to_sign(self):
        """Keys lowercased and sorted, auth_signature left out, values unescaped."""
        text = signing.rest_string_to_sign("POST", "/apps/3/events", {
            "auth_key": "k", "Auth_Timestamp": "1", "auth_signature": "x", "b": "a b"})
        self.assertEqual(text, "POST\n/apps/3/events\nauth_key=k&auth_timestamp=1&b=a b")

    def test_rest_vector_from_the_docs(self):
        """The REST signature example of the Pusher docs verifies."""
        params = {"auth_key": "278d425bdf160c739803", "auth_timestamp": "1353088179",
                  "auth_version": "1.0", "body_md5": "ec365a775a4cd0599faeb73354201b6f"}
        self.assertEqual(signing.rest_signature(SECRET, "POST", "/apps/3/events", params),
                         "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c")

    def test_user_auth(self):
        """Sign-in signs socket_id::user::user_data."""
        auth = signing.user_auth(KEY, SECRET, "1.1", '{"id":"u"}')
        self.assertTrue(signing.verify_user_auth(KEY, SECRET, "1.1", '{"id":"u"}', auth))
        self.assertFalse(signing.verify_user_auth(KEY, SECRET, "1.2", '{"id":"u"}', auth))
