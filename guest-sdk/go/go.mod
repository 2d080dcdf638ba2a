module kwasm/guest

go 1.24
