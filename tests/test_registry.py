import pytest

from steerscope.errors import SteerscopeError
from steerscope.registry import Registry


def test_register_lookup_and_the_error_for_an_unknown_name():
    things: Registry[int] = Registry("unknown thing {name}; known: {known}")

    @things.register("b")
    def b():
        return 2

    things.register("a")(1)
    assert list(things) == ["b", "a"] and things.lookup("a") == 1 and things.lookup("b") is b
    things.register("a")(3)  # a later registration replaces an earlier one
    assert things.lookup("a") == 3
    with pytest.raises(SteerscopeError, match=r"^unknown thing 'c'; known: a, b$"):
        things.lookup("c")
