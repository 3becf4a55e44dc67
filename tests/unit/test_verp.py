from service.verp import delivery_id_from_verp, looks_like_verp, verp_address

KEY, OLD_KEY = "current-key-0123456789", "older-key-0123456789"


def test_a_verp_address_names_its_delivery():
    address = verp_address("bounces@news.example.com", 123, KEY)
    assert address.startswith("bounces+d123-") and address.endswith("@news.example.com")
    assert delivery_id_from_verp(address, "bounces@news.example.com", [KEY]) == 123
    assert delivery_id_from_verp(f"<{address.upper()}>", "bounces@news.example.com", [KEY]) == 123


def test_a_forged_or_foreign_verp_address_names_nothing():
    address = verp_address("bounces@news.example.com", 123, KEY)
    forged = address.replace("+d123-", "+d124-")
    assert delivery_id_from_verp(forged, "bounces@news.example.com", [KEY]) is None
    assert delivery_id_from_verp(address, "other@news.example.com", [KEY]) is None
    assert delivery_id_from_verp(address, "bounces@elsewhere.example.com", [KEY]) is None
    assert delivery_id_from_verp("bounces@news.example.com", "bounces@news.example.com", [KEY]) is None
    assert delivery_id_from_verp(address, "bounces@news.example.com", ["some other key"]) is None


def test_bounces_of_mail_signed_with_a_rotated_key_still_map():
    address = verp_address("bounces@news.example.com", 9, OLD_KEY)
    assert delivery_id_from_verp(address, "bounces@news.example.com", [KEY, OLD_KEY]) == 9


def test_an_address_looks_like_verp_by_its_shape_whatever_its_signature():
    address = verp_address("bounces@news.example.com", 123, KEY)
    assert looks_like_verp(address, "bounces@news.example.com")
    assert looks_like_verp(f" <{address.upper()}> ", "bounces@news.example.com")
    forged = "bounces+d124-0000000000@news.example.com"
    assert looks_like_verp(forged, "bounces@news.example.com")
    assert delivery_id_from_verp(forged, "bounces@news.example.com", [KEY]) is None
    assert not looks_like_verp(address, "other@news.example.com")
    assert not looks_like_verp(address, "bounces@elsewhere.example.com")
    assert not looks_like_verp("bounces@news.example.com", "bounces@news.example.com")
    assert not looks_like_verp("bounces+list@news.example.com", "bounces@news.example.com")
    assert not looks_like_verp("reader@example.org", "bounces@news.example.com")


def test_an_id_no_delivery_can_have_names_nothing_and_raises_nothing():
    # A bounce's headers are anyone's to write; int() refuses over 4,300 digits with ValueError.
    for digits in ("9" * 5000, str(2**31), "12345678901"):
        address = f"bounces+d{digits}-0123456789@news.example.com"
        assert delivery_id_from_verp(address, "bounces@news.example.com", [KEY]) is None
    genuine_but_too_large = verp_address("bounces@news.example.com", 2**31, KEY)  # only SECRET_KEY makes one
    assert delivery_id_from_verp(genuine_but_too_large, "bounces@news.example.com", [KEY]) is None
    largest = verp_address("bounces@news.example.com", 2**31 - 1, KEY)
    assert delivery_id_from_verp(largest, "bounces@news.example.com", [KEY]) == 2**31 - 1
