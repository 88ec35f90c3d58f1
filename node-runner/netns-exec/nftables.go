package main

import (
	"encoding/binary"
	"fmt"
	"strings"
	"syscall"
)

// nftables netlink constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const (
	netlinkNetfilter   = 12
	nfnlSubsysNftables = 10
	nftMsgNewTable     = 0
	nftMsgGetTable     = 1
	nftaTableName      = 1
)

var familyNames = map[uint8]string{1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

// listNftTables lists the nftables tables of the calling thread's network namespace, one
// "<family> <name>" line each: the tables iptables-nft keeps its rules in, and any other. No
// table means no rule of iptables-nft, which lets the node-runner skip a save that would print
// nothing.
func listNftTables() (string, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, netlinkNetfilter)
	if err != nil {
		return "", fmt.Errorf("netlink socket: %w", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return "", fmt.Errorf("netlink bind: %w", err)
	}
	// nlmsghdr + nfgenmsg {family AF_UNSPEC, version 0, res_id 0}: every table of every family.
	req := make([]byte, syscall.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], nfnlSubsysNftables<<8|nftMsgGetTable)
	binary.NativeEndian.PutUint16(req[6:8], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], 1)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return "", fmt.Errorf("netlink send: %w", err)
	}
	var tables []string
	buf := make([]byte, 64<<10)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return "", fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return "", fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			switch {
			case m.Header.Type == syscall.NLMSG_DONE:
				return strings.Join(tables, ""), nil
			case m.Header.Type == syscall.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
						return "", fmt.Errorf("nftables: %v", syscall.Errno(-code))
					}
				}
				return strings.Join(tables, ""), nil
			case m.Header.Type == nfnlSubsysNftables<<8|nftMsgNewTable && len(m.Data) >= 4:
				tables = append(tables, fmt.Sprintf("%s %s\n", familyName(m.Data[0]), tableName(m.Data[4:])))
			}
		}
	}
}

func familyName(f uint8) string {
	if name, ok := familyNames[f]; ok {
		return name
	}
	return fmt.Sprintf("family-%d", f)
}

// tableName is the NFTA_TABLE_NAME attribute of a table message ("?" when absent).
func tableName(attrs []byte) string {
	for len(attrs) >= 4 {
		length := int(binary.NativeEndian.Uint16(attrs[0:2]))
		kind := binary.NativeEndian.Uint16(attrs[2:4]) & 0x3fff
		if length < 4 || length > len(attrs) {
			break
		}
		if kind == nftaTableName {
			return strings.TrimRight(string(attrs[4:length]), "\x00")
		}
		aligned := (length + 3) &^ 3
		if aligned > len(attrs) {
			break
		}
		attrs = attrs[aligned:]
	}
	return "?"
}
