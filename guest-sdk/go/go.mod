module sluice/plugin

go 1.24
