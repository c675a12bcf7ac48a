"""core.system: scoped process settings."""

from __future__ import annotations

from core.system import temporarily


def test_temporarily_restores_the_setting_even_after_an_error():
    setting = {"threads": 4}
    get, set_to = (lambda: setting["threads"]), (lambda v: setting.update(threads=v))
    with temporarily(get, set_to, 1):
        assert setting["threads"] == 1
    assert setting["threads"] == 4
    try:
        with temporarily(get, set_to, 2):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert setting["threads"] == 4
