module podnet.local/netns-exec

go 1.22
