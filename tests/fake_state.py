"""In-memory stand-ins for Beam user state, to call a stateful DoFn's methods directly."""


class FakeValueState:
    """A ReadModifyWriteState of one key."""

    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class FakeTimer:
    """A timer of one key: ``times`` lists every time set, and ``at`` is the pending one."""

    def __init__(self):
        self.times = []
        self.at = None

    def set(self, timestamp):
        self.times.append(timestamp)
        self.at = float(timestamp)


class FakeBagState:
    """A BagState of one key."""

    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)

    def read(self):
        return list(self.items)

    def clear(self):
        self.items = []
