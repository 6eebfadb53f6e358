module csr-warden/x509read

go 1.26
