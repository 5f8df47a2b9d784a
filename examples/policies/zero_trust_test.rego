package zero_trust.api_test
import rego.v1

import data.zero_trust.api

compliant_with_mfa := {"jwt": {"sub": "alice", "amr": ["pwd", "mfa"]}, "device_id": "device-1122"}

test_compliant_device_with_mfa_is_allowed if {
    api.allow with input as compliant_with_mfa
}

test_password_alone_is_denied if {
    not api.allow with input as object.union(compliant_with_mfa, {"jwt": {"sub": "alice", "amr": ["pwd"]}})
}

test_noncompliant_device_is_denied if {
    not api.allow with input as object.union(compliant_with_mfa, {"device_id": "device-3344"})
}

test_unknown_device_is_denied if {
    not api.allow with input as object.union(compliant_with_mfa, {"device_id": "device-9999"})
}

test_a_device_that_turns_noncompliant_is_denied if {
    not api.allow with input as compliant_with_mfa
        with data.devices as {"device-1122": {"is_compliant": false}}
}
