#!/usr/bin/perl
# An independent DKIM verifier for the tests: Perl's Mail::DKIM (Debian's
# libmail-dkim-perl). Reads a message on stdin; the selector's TXT record comes
# from the environment (DKIM_TXT) instead of DNS, the only part replaced.
# Prints "<result> <detail>" for the first signature, e.g. "pass" or "fail (body has been altered)".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;

my $txt = $ENV{DKIM_TXT} or die "DKIM_TXT is not set\n";
{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query_async = sub {
        my ($host, $type, %prms) = @_;
        my @chunks = unpack("(A250)*", $txt);
        my $rr = Net::DNS::RR->new(name => $host, type => 'TXT', txtdata => [@chunks]);
        my $result = $prms{Callbacks}{Success}->($rr);
        return sub { $result };
    };
}
my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
my ($sig) = $dkim->signatures;
print defined $sig ? $sig->result_detail : "none", "\n";
