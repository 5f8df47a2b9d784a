package zero_trust.api
import rego.v1

default allow = false

allow if {
    mfa_completed
    device_is_compliant
}

mfa_completed if {
    "mfa" in input.jwt.amr
}

device_is_compliant if {
    device_id := input.device_id
    data.devices[device_id].is_compliant == true
}
