package plugin

import "testing"

func TestRoundTripLikeSerde(t *testing.T) {
	cases := map[string]string{
		`{"b":1,"a":[1.50,2E3,-0,1e16,1e15,0.00001,1.2e-7,18446744073709551615,18446744073709551616,-9223372036854775809]}`: `{"b":1,"a":[1.5,2000.0,-0.0,1e+16,1000000000000000.0,0.00001,1.2e-7,18446744073709551615,1.8446744073709552e+19,-9.223372036854776e+18]}`,
		` { "s" : "\u0041\/\n\u001f é\ud83d\ude00" , "s" : true, "n": null } `:                                              `{"s":true,"n":null}`,
		`{"x":"\u00e9\u001F\u007f"}`: "{\"x\":\"é\\u001f\x7f\"}",
	}
	for in, want := range cases {
		v, err := ParseJSON([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := string(AppendJSON(nil, v)); got != want {
			t.Errorf("%s:\n got  %s\n want %s", in, got, want)
		}
	}
	for _, bad := range []string{`{"a":1,}`, `[01]`, `"\ud800"`, `1e400`, `{"a" 1}`, "\"\xff\"", `nul`} {
		if _, err := ParseJSON([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}
