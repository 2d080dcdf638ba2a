module go-passthrough

go 1.24

require kwasm/guest v0.0.0

replace kwasm/guest => ../../guest-sdk/go
