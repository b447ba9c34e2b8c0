"""The one redaction module: `redact` for our own text, `mask_message` for a peer's."""

from shared.redaction import MAX_MESSAGE, mask_message, redact


def test_redact_masks_credential_shapes_and_keeps_the_key():
    text = (
        "token=abc123 Authorization: Bearer abcdefgh12345 key sk-ant-api03-abcdef "
        "vault hvs.0123456789abcdefghijKL forge ghp_0123456789ab"
    )
    assert redact(text) == ("token=*** Authorization: *** *** key *** vault *** forge ***")


def test_redact_masks_a_private_key_block():
    text = "x -----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY----- y"
    assert redact(text) == "x *** y"


def test_redact_leaves_plain_text_alone():
    assert redact("instance 42 is running") == "instance 42 is running"


def test_mask_message_masks_known_values_and_token_runs_on_one_bounded_line():
    message = mask_message("bad hunter22 and ghp_x\n" + "a" * 32 + " tail" * 100, ["hunter22", "x"])
    assert message.startswith("bad *** and *** *** tail")
    assert "\n" not in message
    assert len(message) == MAX_MESSAGE and message.endswith("…")
