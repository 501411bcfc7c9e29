"""The one exception tree of lorafleet; the CLI maps each branch to an exit code.

LorafleetError                 exit 1  a failure
├── BadInput                   exit 2  the caller's input is wrong (spec, name, URL, flag)
│   └── NotFound               exit 2  an unknown run, adapter, family, version or alias
├── Refused                    exit 3  valid input, but the action is not allowed
│   ├── GateRefused            exit 3  the promote gate found a regression
│   ├── Conflict               exit 3  another writer moved the alias first
│   └── IntegrityError         exit 3  an artifact's checksum does not match
└── StoreUnavailable           exit 1  the store cannot be reached or its lock is held
"""


class LorafleetError(Exception):
    exit_code = 1


class BadInput(LorafleetError):
    exit_code = 2


class NotFound(BadInput):
    pass


class Refused(LorafleetError):
    exit_code = 3


class GateRefused(Refused):
    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class Conflict(Refused):
    pass


class IntegrityError(Refused):
    pass


class StoreUnavailable(LorafleetError):
    pass
