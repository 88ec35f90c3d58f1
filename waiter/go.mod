module podnet.local/waiter

go 1.22
