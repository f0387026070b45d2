module abi_go

go 1.24

require sluice/plugin v0.0.0

replace sluice/plugin => ../../guest-sdk/go
